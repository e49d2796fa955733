"""`python -m hf_tl.report`: the same as `hf-tl report`, kept for the commands people already have."""

from hf_tl.cli.report import main

if __name__ == "__main__":
    main()
