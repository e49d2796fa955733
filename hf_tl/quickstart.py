"""`python -m hf_tl.quickstart`: the same as `hf-tl quickstart`, kept for the commands people already have."""

from hf_tl.cli.quickstart import main

if __name__ == "__main__":
    main()
