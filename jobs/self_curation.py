"""`ray job submit` entrypoint for the seed pipeline (generate -> score), the same job as `backtrans run`.

ray job submit --working-dir . -- python jobs/self_curation.py jobs/configs/demo.yaml [--set k=v]
"""

import sys

from backtrans.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint())
