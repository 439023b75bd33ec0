"""Engines that run the secret-shared arithmetic. Only `crypten.py` imports CrypTen."""
