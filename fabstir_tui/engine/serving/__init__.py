"""Serving a request, whatever carried it (P2P, HTTP, WebSocket): admission against the job
pipeline, inference slots, batched tokens, receipts. Transports only move frames."""
