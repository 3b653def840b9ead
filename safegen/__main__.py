"""``python -m safegen``: the CLI, so ``accelerate launch -m safegen bench i2p ...`` works."""

from safegen.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
