#!/bin/bash
# TTA cost: pipeline predict on 16 OpenKBP test cases, the joint head's calibrated first model
# (seed 2020), alternating without and with --tta, nothing else running.
cd /work/okbp/s27

M=runs/20261206-174101-openkbp-cascade/calibrate/joint-c_2020
for rep in 1 2; do
  for mode in plain tta; do
    flag=""; [ $mode = tta ] && flag=--tta
    rm -rf /tmp/tout; s=$(date +%s.%N)
    ./pipeline-29 predict -q -m $M -i /tmp/tcases --image ct.nii.gz -o /tmp/tout $flag
    e=$(date +%s.%N); echo "$rep $mode rc $? $(echo "$e - $s" | bc) s"
  done
done
