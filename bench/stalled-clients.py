#!/usr/bin/env python3
"""Clients that send without reading: 200 connections to a trackplane on
127.0.0.1:8080, each writing up to 1.08 MB of pipelined pixel calls
(until its socket takes no more) and never reading an answer. After 3 s
it prints the server's resident memory, to compare what such clients
make a server hold (bench/results/stalled-*.md).

    bench/stalled-clients.py SERVER_PID
"""
import socket, time, sys
pid=sys.argv[1]
req=b"GET /i?adv=a&ev=impression&pid=1 HTTP/1.1\r\nHost: x\r\n\r\n"
blob=req*20000
socks=[]
for i in range(200):
    s=socket.create_connection(("127.0.0.1",8080)); s.setblocking(False)
    sent=0
    try:
        while sent < len(blob):
            sent+=s.send(blob[sent:])
    except BlockingIOError:
        pass
    socks.append((s,sent))
time.sleep(3)
rss=[l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].strip()
print("sent per conn (first 3):",[x[1] for x in socks[:3]], rss)
