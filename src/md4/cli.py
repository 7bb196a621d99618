"""The ``md4`` command line."""

import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="md4", description="Masked discrete diffusion (MD4).")
    parser.parse_args(argv)
    parser.print_help()
    return 0
