"""The sender's own nonce counter: consecutive nonces under concurrency, holes refilled."""

from __future__ import annotations


class NonceCounter:
    """Next nonce plus nonces given back below it; the sender's lock serialises its use."""

    def __init__(self) -> None:
        self.next: int | None = None
        self.free: set[int] = set()

    @property
    def ready(self) -> bool:
        """False until the chain and journal have been read."""
        return self.next is not None

    def reset(self, chain_next: int, highest_live: int | None, held: set[int]) -> None:
        """Start past both the chain's pending count and every live journaled nonce; holes
        in between that no pending transaction holds are handed out first, so a nonce that
        was given back (or never broadcast and dropped) cannot strand the ones above it."""
        top = max(chain_next, -1 if highest_live is None else highest_live + 1)
        self.free = {n for n in range(chain_next, top) if n not in held}
        self.next = top

    def take(self) -> int:
        """The lowest free nonce first, so no gap is left behind."""
        if self.next is None:
            raise RuntimeError("the nonce counter is not initialised")
        if self.free:
            nonce = min(self.free)
            self.free.remove(nonce)
            return nonce
        self.next += 1
        return self.next - 1

    def give_back(self, nonce: int) -> None:
        """Only for a nonce the node certainly does not hold."""
        if self.next is None or nonce >= self.next:
            return
        if nonce == self.next - 1:
            self.next -= 1
            while self.next - 1 in self.free:
                self.free.remove(self.next - 1)
                self.next -= 1
        else:
            self.free.add(nonce)

    def raise_floor(self, chain_next: int) -> None:
        """After 'nonce too low': another wallet used our nonces; never hand out one below."""
        if self.next is not None:
            self.next = max(self.next, chain_next)
            self.free = {n for n in self.free if n >= chain_next}
