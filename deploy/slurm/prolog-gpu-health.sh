#!/bin/bash
# Optional Slurm Prolog (slurm.conf: Prolog=/etc/slurm/prolog-gpu-health.sh, PrologFlags=Alloc):
# refuse to start a job on a node whose GPUs are already known bad, so a job that ftsup requeued does
# not land on a sick node ftsup has not heard about yet. A Prolog that exits non-zero makes Slurm drain
# the node (reason "Prolog error") and requeue the job; ftsup never resumes such a drain (its reason
# does not start with "ftsup:"): a human looks at the node first.
#
# Checks, each skipped when its tool is missing (CPU nodes pass):
# - nvidia-smi answers within 20 s;
# - the kernel log has no Xid 79 (GPU fallen off the bus) or 48 (double-bit ECC error) since boot.
set -u
if command -v nvidia-smi >/dev/null 2>&1; then
    if ! timeout 20 nvidia-smi -L >/dev/null 2>&1; then
        echo "prolog: nvidia-smi does not answer on $(hostname -s)" >&2
        exit 1
    fi
fi
if command -v dmesg >/dev/null 2>&1; then
    if timeout 10 dmesg 2>/dev/null | grep -Eq 'NVRM: Xid \(PCI:[0-9a-fA-F:.]+\): (79|48),'; then
        echo "prolog: Xid 79/48 in the kernel log of $(hostname -s)" >&2
        exit 1
    fi
fi
exit 0
