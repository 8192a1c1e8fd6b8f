#!/usr/bin/env python3
"""An S3-compatible server for Capstan's tests: moto's server mode on 127.0.0.1 with request
signatures checked (IAM auth on: a request signed with a wrong secret key is refused with
SignatureDoesNotMatch).

    s3_server.py PORT INFO_FILE

Creates an IAM user with an access key allowed everything and the bucket `capstan-backups`,
writes {"endpoint", "accessKeyId", "secretAccessKey", "bucket"} to INFO_FILE, then serves until
its standard input closes (the test that started it ended) or it is killed."""
import json
import os
import sys

# The first three requests (the IAM user, its key, its policy) are the only unauthenticated ones.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")

import boto3  # noqa: E402  (moto depends on it)
from moto.server import ThreadedMotoServer  # noqa: E402

port = int(sys.argv[1])
server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
server.start()
endpoint = f"http://127.0.0.1:{port}"
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="capstan")
key = iam.create_access_key(UserName="capstan")["AccessKey"]
iam.put_user_policy(UserName="capstan", PolicyName="all",
                    PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
s3.create_bucket(Bucket="capstan-backups")
info = {"endpoint": endpoint, "accessKeyId": key["AccessKeyId"], "secretAccessKey": key["SecretAccessKey"], "bucket": "capstan-backups"}
with open(sys.argv[2] + ".tmp", "w") as out:
    json.dump(info, out)
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
sys.stdin.read()
server.stop()
