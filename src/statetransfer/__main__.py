"""``python -m statetransfer``: the command line."""

from .cli import main

main(prog_name="statetransfer")
