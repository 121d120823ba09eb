"""`ray job submit` entrypoint for the web-corpus job (segments -> augment -> score -> a4/a5), as `backtrans run`.

ray job submit --working-dir . -- python jobs/self_augmentation.py jobs/configs/web_demo.yaml [--set k=v]
"""

import sys

from backtrans.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint())
