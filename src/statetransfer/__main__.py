"""``python -m statetransfer``: the command line."""

from ._cli import main

main(prog_name="statetransfer")
