"""Parses Prometheus exposition text from stdin with the reference parser
(prometheus_client) and prints every sample as JSON: name, labels, value.
A text the parser rejects makes this exit non-zero."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({"family": family.name, "type": family.type, "name": sample.name,
                        "labels": sample.labels, "value": sample.value})
json.dump(samples, sys.stdout)
