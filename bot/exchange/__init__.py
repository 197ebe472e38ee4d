"""The ccxt boundary: building the client, translating its errors, reading its markets.
Nothing outside this package (and the adapters that use it) imports ccxt."""
