"""A shard: the contiguous range of a model's layers that one node runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Shard:
    """Layers `start_layer..end_layer` (both inclusive) of a `num_layers`-layer model.

    The first shard also embeds tokens; the last also applies the final norm and
    the output head. A shard covering every layer is both.
    """

    model_id: str
    start_layer: int
    end_layer: int
    num_layers: int

    def __post_init__(self) -> None:
        if not 0 <= self.start_layer <= self.end_layer < self.num_layers:
            raise ValueError(
                f"invalid shard layers {self.start_layer}..{self.end_layer} "
                f"of a {self.num_layers}-layer model"
            )

    @classmethod
    def whole(cls, model_id: str, num_layers: int) -> Shard:
        return cls(model_id, 0, num_layers - 1, num_layers)

    @property
    def is_first(self) -> bool:
        return self.start_layer == 0

    @property
    def is_last(self) -> bool:
        return self.end_layer == self.num_layers - 1

    @property
    def layer_count(self) -> int:
        return self.end_layer - self.start_layer + 1

    def layers(self) -> range:
        return range(self.start_layer, self.end_layer + 1)
