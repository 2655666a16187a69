"""``python -m flowpool``: the same as the ``flowpool`` command."""

from flowpool.cli import main

if __name__ == "__main__":
    main(prog_name="flowpool")
