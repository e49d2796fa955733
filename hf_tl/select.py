"""`python -m hf_tl.select`: the same as `hf-tl select`, as every command has its `python -m hf_tl.NAME`."""

from hf_tl.cli.select import main

if __name__ == "__main__":
    main()
