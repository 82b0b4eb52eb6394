"""Sans-I/O wire code of /sync/v1: request parsing, cursor tokens, HMAC integrity, errors."""
