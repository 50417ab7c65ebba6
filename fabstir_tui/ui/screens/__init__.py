"""One screen per module; each live screen owns the engine feed it draws from."""
