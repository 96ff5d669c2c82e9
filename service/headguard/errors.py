"""Errors that carry a message meant for the person at the terminal or the API client."""


class HeadguardError(Exception):
    """A failure caused by the input or the environment, with a one-line explanation."""


class InputError(HeadguardError):
    """The caller asked for something invalid (unknown name, value out of range, bad file)."""
