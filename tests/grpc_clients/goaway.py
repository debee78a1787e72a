"""Watches one HTTP/2 connection to the scaler's gRPC port and reports, in order, the GOAWAY
frames the server sends and the moment the connection closes, as JSON lines. Prints
{"ready": true} once the server's SETTINGS arrived, then {"goaway": error code, "last_stream_id":
n} for each GOAWAY, then {"closed": true}. Pings every 100 ms, so that a server that stopped
answering without a GOAWAY shows as "closed" with no "goaway" before it.
"""

import argparse
import json
import socket

import h2.config
import h2.connection
import h2.events


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True, help="host:port")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=0.1)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    ready = False
    terminated = False
    while True:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            if terminated:
                continue
            try:
                conn.ping(b"ado-scal")
                sock.sendall(conn.data_to_send())
            except Exception:
                pass
            continue
        except OSError:
            data = b""
        if not data:
            print(json.dumps({"closed": True}), flush=True)
            return
        if terminated:
            continue  # only the close is left to see
        try:
            events = conn.receive_data(data)
        except Exception:
            events = []
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged) and not ready:
                ready = True
                print(json.dumps({"ready": True}), flush=True)
            elif isinstance(event, h2.events.ConnectionTerminated):
                terminated = True
                print(json.dumps({"goaway": int(event.error_code), "last_stream_id": event.last_stream_id}), flush=True)
        try:
            sock.sendall(conn.data_to_send())
        except OSError:
            pass


if __name__ == "__main__":
    main()
