"""`python -m hf_tl.download`: the same as `hf-tl download`, kept for the commands people already have."""

from hf_tl.cli.download import main

if __name__ == "__main__":
    main()
