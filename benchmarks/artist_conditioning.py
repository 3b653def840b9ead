"""How far apart the mini model's text encoder puts an artist and what it draws: the conditioning a UNet-side
erasure (SC-DPO's LoRA) must tell apart.

    python benchmarks/artist_conditioning.py            # -> benchmarks/results/artist_conditioning.md

For every artist of the mini world and every (colour, object), the distance (Frobenius norm of the
difference of the text encoder's output sequences, the UNet's cross-attention input) between the artist's
caption ``a {colour} {object} by {artist}`` and: the same caption with the other artist of the same
signature texture; the caption naming the signature texture instead (``a {colour} {texture} {object}``);
the same caption with an artist of another texture; and, as the scale of one word that changes the image,
``a {colour} {texture} {object}`` against the same caption with another texture. Means over the 36
(colour, object) pairs, and over artists in the last row.
"""

from __future__ import annotations

import itertools

import torch
from helpers import ROOT, write_markdown

from safegen.generator import encode_text
from safegen.loader import load_model
from safegen.mini.world import World

RESULTS = ROOT / "benchmarks" / "results"


def distances(model, world: World, artist, combos) -> dict[str, float]:
    """Mean distances of ``artist``'s captions to its sibling's, its texture's and another texture's."""
    sibling = next(a for a in world.artists if a.texture == artist.texture and a.name != artist.name)
    other = next(a for a in world.artists if a.texture != artist.texture)
    texture_swap = next(t for t in world.values["texture"] if t != artist.texture)

    def enc(template: str, **words) -> torch.Tensor:
        return encode_text(model, [template.format(color=c, object=o, **words) for c, o in combos])

    by = "a {color} {object} by {artist}"
    named = "a {color} {texture} {object}"
    own = enc(by, artist=artist.name)
    dist = lambda a, b: float((a - b).flatten(1).norm(dim=1).mean())  # noqa: E731
    return {
        "sibling": dist(own, enc(by, artist=sibling.name)),
        "texture": dist(own, enc(named, texture=artist.texture)),
        "other artist": dist(own, enc(by, artist=other.name)),
        "texture word": dist(enc(named, texture=artist.texture), enc(named, texture=texture_swap)),
    }


@torch.no_grad()
def main() -> None:
    model, world = load_model("mini", device="cpu"), World.load()
    combos = list(itertools.product(world.values["color"], world.values["object"]))
    head = ["artist", "texture", "to the other artist of its texture", "to its texture named",
            "to an artist of another texture", "texture word swapped (scale)"]  # fmt: skip
    cells, sums = [], {}
    for artist in world.artists:
        d = distances(model, world, artist, combos)
        sums = {k: sums.get(k, 0.0) + v for k, v in d.items()}
        cells.append([artist.name, artist.texture, *(f"{v:.1f}" for v in d.values())])
    cells.append(["mean", "", *(f"{v / len(world.artists):.1f}" for v in sums.values())])
    intro = __doc__.split("\n\n", 2)[2].replace("\n", " ").strip()
    page = RESULTS / "artist_conditioning.md"
    print(write_markdown(page, "Artist conditioning on mini", intro, head, cells))


if __name__ == "__main__":
    main()
