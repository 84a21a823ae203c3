"""The project's own exception types: what a user can cause, named so it can be fixed."""


class FactoryError(Exception):
    """Base of every error a user can cause (bad params, bad input, network)."""


class ParamsError(FactoryError):
    """A missing or invalid key in params.yaml; the message names the stage and the key."""


class SourceError(FactoryError):
    """A source (bucket, mirror, HTTP server) could not be listed or read."""


class ArticleError(FactoryError):
    """One article (or one of its files) is broken; recorded and skipped, never fatal."""


class DataError(FactoryError):
    """A stage's input data is missing or unusable (empty split, unreadable shard, …)."""


class DivergedError(FactoryError):
    """Training reached a non-finite loss: the run stops before checkpointing weights that may hold it."""


class AccessError(FactoryError):
    """A tracking server refused the request: no credentials, wrong ones, or too few permissions."""


class TrackingServerError(FactoryError):
    """The tracking server could not be reached, or did not answer in time, through all of MLflow's retries."""
