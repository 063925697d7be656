"""``python -m hil.qemu build|boot|show`` (build needs root).

python -m hil.qemu build --arch arm64          # cached: seconds when nothing changed
python -m hil.qemu boot --arch arm64           # console on this terminal; Ctrl-A X quits
python -m hil.qemu boot --arch arm64 --config my-dvrlinkd.toml --console-socket /tmp/console.sock
python -m hil.qemu show --arch arm64           # the cached image for the tree as it is now
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from hil.qemu.boot import BootError, BootOptions, qemu_command, run_interactive
from hil.qemu.build import BuildError, build, cache_root, find_image, keys
from hil.qemu.targets import TARGETS, target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hil.qemu", description="dvrlink QEMU rig: the image's files on emulated ARM"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in (
        ("build", "build (or find) the image for the tree as it is now (needs root)"),
        ("boot", "boot the built image under TCG with the console on this terminal"),
        ("show", "print the cached image's manifest and the layer keys"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--arch", choices=sorted(TARGETS), default="arm64")
        cmd.add_argument("--cache", type=Path, help=f"cache directory (default {cache_root()})")
    boot = sub.choices["boot"]
    boot.add_argument("--mem", type=int, help="guest RAM in MiB (default: the target's)")
    boot.add_argument("--config", type=Path, help="a dvrlinkd.toml for the guest (fw_cfg; armhf: a disk)")
    boot.add_argument("--console-socket", type=Path, help="put the console on this unix socket instead")
    boot.add_argument("--print", action="store_true", help="print the QEMU command line and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    board = target(args.arch)
    try:
        if args.command == "build":
            image = build(board, cache=args.cache)
            print(f"image {image.rootfs}\nkernel {image.kernel}\ninitrd {image.initrd}")
            return 0
        image_found = find_image(board, args.cache)
        if args.command == "show":
            layer_keys = keys(board)
            print(f"keys: base {layer_keys.base} deps {layer_keys.deps} dvrlink {layer_keys.dvrlink}")
            if image_found is None:
                print(f"no image for the tree as it is now (image key {layer_keys.image}): run build")
                return 1
            print(json.dumps(image_found.manifest, indent=2, sort_keys=True))
            return 0
        if image_found is None:
            print(
                f"no {board.name} image for the tree as it is now: "
                f"run `python -m hil.qemu build --arch {board.name}`",
                file=sys.stderr,
            )
            return 1
        options = BootOptions(
            mem_mb=args.mem or board.default_mem_mb, config=args.config, console_socket=args.console_socket
        )
        if args.print:
            print(shlex.join(qemu_command(board, image_found, options, Path("RUN_DIR"))))
            return 0
        return run_interactive(board, image_found, options)
    except (BuildError, BootError) as exc:
        print(f"hil.qemu {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
