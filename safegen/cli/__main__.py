"""``python -m safegen.cli``: the same as ``safegen``."""

from safegen.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
