"""Defaults of the command-line options, apart from the modules that use them, so that
``zarrfs pack`` or ``zarrfs info`` starts without importing the FUSE daemon."""

DEFAULT_TIMEOUT = 60.0  # seconds the kernel may cache names, attributes and pages (NFS's acregmax)
DEFAULT_SHARDS = 8  # inner chunks per shard along every axis, for arrays created through the mount
DEFAULT_FLUSH_AFTER = 5.0  # seconds of quiet before a changed shard is repacked
DEFAULT_MAX_DIRTY_MIB = 256
DEFAULT_MAX_SCRATCH_MIB = 1024  # per user: temporaries and locks held in memory
DEFAULT_JOBS = 16  # concurrent shard or index reads (check, info): enough to hide network filesystem latency
