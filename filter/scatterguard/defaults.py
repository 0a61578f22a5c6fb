"""The constants every layer reads first: where the configuration and the server are, and limits.

Standard library only, and nothing heavy: the hand-over client (the fast path of every filter
process) reads these before the config module and its imports are loaded.
"""

# Where the filter looks for its configuration and, by default, for the server. The fast path
# reads them before the config module (and its imports) is loaded; config.py takes them from here
# too.
DEFAULT_CONFIG = "/etc/scatterguard/scatterguard.toml"
DEFAULT_SOCKET = "/run/scatterguard/scatterguard.sock"
DEFAULT_TIMEOUT = 300.0
# The longest timeout the configuration accepts (a day; the MTAs' own limits are far shorter).
MAX_TIMEOUT = 86400.0
# The user the packaged server runs as (scatterguard.service), whose server a client trusts.
DEFAULT_USER = "scatterguard"
# The environment variables the filter reads (SCATTERGUARD_CLIENT_ADDRESS, ...) start with this.
ENV_PREFIX = "SCATTERGUARD_"
