"""`batch-runner sandbox`: serve the local stand-in API until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from batch_runner.api import spec as api_spec
from batch_runner.errors import UsageError

if TYPE_CHECKING:
    from batch_runner.sandbox import SandboxConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sandbox",
        help="serve a local stand-in for the Segmind API (no key, no credits spent)",
        description="Serve a local HTTP server on 127.0.0.1 that behaves like Segmind's Ideogram Turbo endpoint.",
    )
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 picks a free one)")
    p.add_argument("--rpm", type=float, help="rate limit per key, in requests per minute (default: none)")
    p.add_argument("--rate-window", type=float, default=60.0, help="length of the limit's window in seconds")
    p.add_argument(
        "--rate-limiter",
        choices=("rolling", "fixed"),
        default="rolling",
        help="rolling: any window of --rate-window s; fixed: windows on the UTC clock that reset at once, "
        "whose 429s carry only x-rate-limit-reset-at-utc (default rolling)",
    )
    p.add_argument("--credits", type=float, default=100.0, help="starting balance in dollars (default 100)")
    p.add_argument(
        "--price",
        type=float,
        default=api_spec.PRICE_PER_IMAGE,
        help=f"dollars per image (default {api_spec.PRICE_PER_IMAGE:g})",
    )
    p.add_argument("--spend-limit", type=float, help="a team spend limit in dollars, answered with its own 406")
    p.add_argument("--latency", type=float, default=2.0, help="seconds per generation (real API: ~12.8; default 2)")
    p.add_argument("--jitter", type=float, default=0.0, help="± seconds of random latency")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests that meet a fault (0..1)")
    p.add_argument(
        "--faults",
        # No list here: naming the kinds would load the sandbox (and Pillow) for every command's --help.
        help="comma-separated fault kinds to draw from (default: every kind; a wrong one is refused with the list)",
    )
    p.add_argument("--slow", type=float, default=5.0, help="seconds a 'slow' fault takes to trickle its body")
    p.add_argument("--response", choices=("bytes", "json", "url"), default="bytes", help="shape of a 200 body")
    p.add_argument("--keys", default="sandbox-key", help="comma-separated API keys to accept (default sandbox-key)")
    p.add_argument("--seed", type=int, default=0, help="makes faults and jitter reproducible")
    p.add_argument("--no-retry-after", action="store_true", help="send 429s with only the reset-time header")
    p.add_argument(
        "--misspell",
        action="append",
        metavar="STYLE=SHARE",
        help="draw a prompt's quoted text with one letter wrong in this share of STYLE's images, e.g. "
        "ANIME=0.3 (repeatable; * for every other style; the same images every time)",
    )
    p.set_defaults(handler=cmd_sandbox)


def config_from(args: argparse.Namespace) -> SandboxConfig:
    from batch_runner.sandbox import SandboxConfig

    if not 0 <= args.fault_rate <= 1:
        raise UsageError(f"--fault-rate {args.fault_rate} must be between 0 and 1")
    keys = tuple(k.strip() for k in args.keys.split(",") if k.strip())
    if not keys:
        raise UsageError("--keys needs at least one key")
    chosen: dict[str, Any] = {}  # the sandbox's own default unless named: every fault kind
    if args.faults is not None:  # "" means no faults, as before
        chosen["faults"] = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    chosen["misspell"] = misspell_rates(args.misspell or [])
    try:
        return SandboxConfig(
            rpm=args.rpm,
            rate_window_s=args.rate_window,
            rate_limiter=args.rate_limiter,
            credits=args.credits,
            price=args.price,
            spend_limit=args.spend_limit,
            latency_s=args.latency,
            jitter_s=args.jitter,
            fault_rate=args.fault_rate,
            **chosen,
            slow_s=args.slow,
            response=args.response,
            keys=keys,
            seed=args.seed,
            retry_after=not args.no_retry_after,
        )
    except ValueError as exc:
        raise UsageError(str(exc))


def misspell_rates(values: list[str]) -> tuple[tuple[str, float], ...]:
    """--misspell STYLE=SHARE values as (style, share) pairs."""
    styles = (*api_spec.STYLE_TYPES, "*")
    rates = []
    for value in values:
        style, _, share = value.partition("=")
        style = style.strip().upper()
        try:
            rate = float(share)
        except ValueError:
            rate = -1.0
        if style not in styles or not 0 <= rate <= 1:
            raise UsageError(
                f"--misspell {value!r}: write STYLE=SHARE with a share from 0 to 1 and a style among "
                f"{', '.join(styles)}, e.g. --misspell ANIME=0.3"
            )
        rates.append((style, rate))
    return tuple(rates)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from batch_runner.sandbox import Sandbox

    config = config_from(args)
    try:
        sandbox = Sandbox(config, port=args.port)
    except OSError as exc:
        raise UsageError(f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror}); pick another --port")
    limit = f"{config.rpm:g} rpm per key ({config.rate_limiter} window)" if config.rpm else "no rate limit"
    print(f"sandbox listening on {sandbox.url}  (placeholder images, no real credits)", flush=True)
    print(f"  endpoint  {sandbox.endpoint}")
    print(f"  keys      {', '.join(config.keys)}")
    print(f"  credits   ${config.credits:,.2f} at ${config.price:g} per image; {limit}")
    print(f"  latency   {config.latency_s:g} s ± {config.jitter_s:g}; faults {config.fault_rate:.0%}")
    if config.misspell:
        print("  misspell  " + ", ".join(f"{style} {rate:.0%}" for style, rate in config.misspell) + " of quoted texts")
    print(f"  stats     {sandbox.url}/sandbox/stats")
    print(
        f"run a job against it:\n  SEGMIND_API_KEY={config.keys[0]} batch-runner run JOB --endpoint {sandbox.endpoint}"
    )
    print("Ctrl-C stops it.", flush=True)
    try:
        sandbox.serve_until_interrupted()
    except KeyboardInterrupt:
        print("sandbox stopped", file=sys.stderr)
    return 0
