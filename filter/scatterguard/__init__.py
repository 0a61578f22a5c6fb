"""scatterguard: an after-queue filter that re-checks SPF, DKIM and DMARC, without backscatter."""

__version__ = "0.1.0"
