"""The one error of the contract: a model directory or graph that breaks it."""


class ContractError(ValueError):
    """The model directory does not follow the contract; the message says how."""
