"""KEDA's side of a scaler restart, with gRPC's own client (grpcio, the C core).

Calls GetMetrics every --poll seconds, as KEDA's scale loop does every pollingInterval, on
one channel that lives for the whole run, with the library's standard reconnect backoff
(nothing here tunes it) and no wait-for-ready: a call made while the channel is in
TRANSIENT_FAILURE fails at once, as KEDA's does. Prints one JSON line per call
({"t": seconds since start, "ok": bool, "code": status}) and stops when stdin closes.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import grpc
from grpc_tools import protoc


def stubs(proto):
    out = tempfile.mkdtemp(prefix="externalscaler-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    status = protoc.main([
        "protoc",
        f"-I{os.path.dirname(proto)}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        proto,
    ])
    if status != 0:
        sys.exit(f"protoc failed on {proto}")
    sys.path.insert(0, out)
    import externalscaler_pb2
    import externalscaler_pb2_grpc
    return externalscaler_pb2, externalscaler_pb2_grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--proto", required=True)
    parser.add_argument("--target", required=True, help="a gRPC target, e.g. ipv4:127.0.0.1:9090,127.0.0.1:9091")
    parser.add_argument("--metadata", required=True, help="the trigger metadata, as a JSON object")
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args()
    pb, pb_grpc = stubs(args.proto)

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    # KEDA's service config: round robin over every address the target resolves to. KEDA
    # dials a Service's DNS name, which is the :authority its calls carry; an ipv4: target
    # with several addresses would send them all, comma-joined, which HTTP/2 refuses.
    channel = grpc.insecure_channel(
        args.target,
        options=[
            ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
            ("grpc.default_authority", "ado-scaler.ado-scaler.svc:9090"),
        ],
    )
    client = pb_grpc.ExternalScalerStub(channel)
    request = pb.GetMetricsRequest(
        scaledObjectRef=pb.ScaledObjectRef(
            name="agents", namespace="ado-agents", scalerMetadata=json.loads(args.metadata)
        ),
        metricName="ado-pool",
    )
    start = time.monotonic()
    next_call = start
    print(json.dumps({"ready": True}), flush=True)
    while not stop.is_set():
        t = time.monotonic() - start
        try:
            client.GetMetrics(request, timeout=args.poll)
            print(json.dumps({"t": t, "ok": True, "code": "OK"}), flush=True)
        except grpc.RpcError as e:
            print(json.dumps({"t": t, "ok": False, "code": e.code().name, "details": e.details()}), flush=True)
        next_call += args.poll
        stop.wait(max(0.0, next_call - time.monotonic()))
    channel.close()


if __name__ == "__main__":
    main()
