"""The simulator: virtual cards, card emulators for real transports, and a city's day of taps."""

__all__: list[str] = []
