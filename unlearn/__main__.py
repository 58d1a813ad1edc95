"""``python -m unlearn`` runs the same entry point as the ``unlearn`` console script."""

from unlearn.cli import main

if __name__ == "__main__":
    main()
