"""`python -m backtrans.simulator [flags]`: serve until SIGTERM or SIGINT (`start_subprocess` runs this)."""

import asyncio

from backtrans.simulator.config import build_parser, config_from_args
from backtrans.simulator.server import serve


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"invalid simulator config: {exc}") from None
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
