"""How the bench names a CSG configuration in its rows and settings."""
from __future__ import annotations


def label(args: dict) -> str:
    tag = f"csg {args['slice']}/{args['code_dim']}"
    return tag if args.get("layout", "contiguous") == "contiguous" else f"{tag} {args['layout']}"
