"""The `dctop` console script. Stdlib only, so that an install without the `tui` extra (a GPU
host's) says what to install instead of failing with ModuleNotFoundError."""

from __future__ import annotations

import sys

from dcsched import __version__, missing_extra


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--version"]:
        print(f"dctop {__version__}")
        return 0
    try:
        from dcsched.tui.app import main as app_main
    except ModuleNotFoundError as exc:
        message = missing_extra("dctop", exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    return app_main(args)


if __name__ == "__main__":
    sys.exit(main())
