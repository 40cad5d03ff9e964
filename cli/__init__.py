"""The ``chatlane`` command and what it supervises: the API, workers, a managed Redis."""
