"""Transfer-learning strategies of an ensemble member, one object each (no string checks elsewhere).

A strategy says how many of the encoder's top layers train (the rest, with the embeddings, stay
frozen), and from that what the member needs: cached sentence embeddings when nothing in the encoder
trains, a saved encoder and epoch checkpoints when something does. ``pair_features`` is the one
member without an encoder: similarity features of a pair's two records (pair tasks only). A new strategy is one entry in
:data:`STRATEGIES` (``params.yaml`` accepts its name from there) plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemberStrategy:
    name: str
    layers: str  # "none" | "top" (the member's ``unfreeze_layers``) | "all"
    help: str
    model: str = "encoder"  # "encoder": a mean-pooled encoder + linear head | "pair_features": see below

    def trainable_layers(self, n_layers: int, unfreeze_layers: int) -> int:
        """How many of the encoder's ``n_layers`` blocks train."""
        if self.layers == "all":
            return n_layers
        if self.layers == "top":
            return max(0, min(int(unfreeze_layers), n_layers))
        return 0

    @property
    def trains_encoder(self) -> bool:
        """Whether the member owns a trained encoder (saved with it, checkpointed per epoch, ELR applies)."""
        return self.model == "encoder" and self.layers != "none"

    @property
    def embeddings_only(self) -> bool:
        """Whether the member is a head on frozen, cacheable sentence embeddings."""
        return self.model == "encoder" and self.layers == "none"

    @property
    def pairs_only(self) -> bool:
        """Whether the member only applies to pair tasks (it is left out, and says so, elsewhere)."""
        return self.model == "pair_features"


STRATEGIES: dict[str, MemberStrategy] = {s.name: s for s in (
    MemberStrategy("head", "none", "a linear head on frozen (cached) sentence embeddings"),
    MemberStrategy("partial", "top", "the head and the top `unfreeze_layers` encoder layers"),
    MemberStrategy("full", "all", "the head and every encoder layer"),
    MemberStrategy("pair_features", "none", "pair tasks only: similarity features of the two records and "
                   "gradient-boosted trees (crowdforge.modeling.pair_features); no encoder", "pair_features"),
)}


def strategy(name: str) -> MemberStrategy:
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is not one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
