"""``gpuaudit certs``: make a CA and certificates for a test or small deployment.

The work is in ``collector.certs``; this module is only its flags and what it
prints (where the files went and the commands that use them).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from collector import certs
from collector.cli_args import UsageError, positive


def add_certs(sub: argparse._SubParsersAction) -> None:
    """Add ``certs init``, ``certs node`` and ``certs reader`` to the subcommands."""
    p = sub.add_parser("certs", help="make a CA and certificates for a test or small deployment")
    csub = p.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = csub.add_parser("init", help="a new CA, collector certificate, nodes and readers")
    init.add_argument("--out", metavar="DIR", type=Path, required=True, help="PKI directory")
    init.add_argument("--node", dest="nodes", action="append", default=[], metavar="NAME",
                      help="a node certificate for this node name (repeat)")
    init.add_argument("--reader", dest="readers", action="append", default=[], metavar="NAME",
                      help="a query-client certificate (repeat)")
    init.add_argument("--collector-name", dest="collector_names", action="append", default=[],
                      metavar="NAME", help="extra DNS name or IP agents use to reach the "
                      "collector (repeat; localhost, 127.0.0.1, ::1 and the host name are added)")
    init.add_argument("--force", action="store_true", help="replace an existing CA in DIR")
    init.set_defaults(run=run_certs_init)
    for role in ("node", "reader"):
        one = csub.add_parser(role, help=f"add a {role} certificate signed by DIR/ca")
        one.add_argument("name", metavar="NAME")
        one.add_argument("--pki", metavar="DIR", type=Path, required=True,
                         help="the directory `gpuaudit certs init --out` made")
        one.set_defaults(run=run_certs_one, role=role)
    for q in (init, *[csub.choices[r] for r in ("node", "reader")]):
        q.add_argument("--days", type=positive(float), default=certs.DEFAULT_LEAF_DAYS,
                       help=f"leaf certificate lifetime (default: {certs.DEFAULT_LEAF_DAYS})")
    # main() names args.collector when an RPC fails; certs makes none.
    p.set_defaults(collector=None)


def run_certs_init(args: argparse.Namespace) -> int:
    """``gpuaudit certs init``: write a new PKI and say how to use it."""
    try:
        pki = certs.init_pki(args.out, args.nodes, args.readers, args.collector_names,
                             args.days, overwrite=args.force)
    except (certs.PkiError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(f"wrote CA {pki.ca_dir} (ca.crt, ca.key: keep ca.key private, off the nodes)")
    print(f"wrote collector {pki.collector.cert.parent} "
          f"(names: {', '.join(certs.collector_names(args.collector_names))})")
    for name, files in pki.nodes.items():
        print(f"wrote node {name}: {files.cert.parent}")
    for name, files in pki.readers.items():
        print(f"wrote reader {name}: {files.cert.parent}")
    _print_usage(pki.root, pki.nodes, pki.readers)
    return 0


def run_certs_one(args: argparse.Namespace) -> int:
    """``gpuaudit certs node|reader NAME --pki DIR``: one more certificate from DIR/ca."""
    issue = {"node": (certs.issue_node, certs.node_dir),
             "reader": (certs.issue_reader, certs.reader_dir)}[args.role]
    try:
        ca = certs.load_ca(args.pki / "ca")
        files = issue[0](ca, args.name, issue[1](args.pki, args.name),
                         certs.Validity.days(args.days))
    except (certs.PkiError, ValueError) as err:
        raise UsageError(str(err)) from None
    print(f"wrote {args.role} {args.name}: {files.cert.parent}")
    flag = f"--tls-dir {files.cert.parent}"
    if args.role == "node":
        print(f"  gpuaudit agent --node {args.name} {flag} --collector HOST:PORT")
    else:
        print(f"  gpuaudit events {flag} --collector HOST:PORT")
    return 0


def _print_usage(root: Path, nodes: Iterable[str], readers: Iterable[str]) -> None:
    node = next(iter(nodes), "NODE")
    reader = next(iter(readers), "NAME")
    print("use:")
    print(f"  gpuaudit collector --tls-dir {root / 'collector'} --listen HOST:PORT")
    print(f"  gpuaudit agent --node {node} --tls-dir {certs.node_dir(root, node)} "
          "--collector HOST:PORT")
    print(f"  gpuaudit events --tls-dir {certs.reader_dir(root, reader)} --collector HOST:PORT")
    print(f"more later: gpuaudit certs node|reader NAME --pki {root}")
