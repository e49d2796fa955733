"""`python -m hf_tl.analyze`: the same as `hf-tl analyze`, kept for the commands people already have."""

from hf_tl.cli.analyze import main

if __name__ == "__main__":
    main()
