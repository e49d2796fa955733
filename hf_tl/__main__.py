"""`python -m hf_tl COMMAND ...`: the same as `hf-tl COMMAND ...`."""

from hf_tl.cli.main import main

if __name__ == "__main__":
    main()
