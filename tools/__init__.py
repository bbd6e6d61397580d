"""Developer tooling that lives in the checkout only: it is not part of the installed qrun package."""
