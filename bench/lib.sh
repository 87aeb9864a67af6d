# Shared by bench/run, bench/idle and bench/bulk-ns (sourced, not run): the proxies'
# configurations, so that every script measures the same set-up. Every writer takes the backend
# ports from the array BACKEND_PORTS (three entries, b1..b3) and writes one file.

# write_fulcrum_toml FILE HTTP_PORT TCP_PORT: service `web` (http) and `bulk` (tcp), round robin
# over b1..b3.
write_fulcrum_toml() {
    local file=$1 http=$2 tcp=$3
    cat >"$file" <<EOF
[[service]]
name = "web"
listen = ["127.0.0.1:$http"]
mode = "http"
pool = "web"

[[service]]
name = "bulk"
listen = ["127.0.0.1:$tcp"]
mode = "tcp"
pool = "web"

[[pool]]
name = "web"
algorithm = "round_robin"

  [[pool.backend]]
  name = "b1"
  address = "127.0.0.1:${BACKEND_PORTS[0]}"

  [[pool.backend]]
  name = "b2"
  address = "127.0.0.1:${BACKEND_PORTS[1]}"

  [[pool.backend]]
  name = "b3"
  address = "127.0.0.1:${BACKEND_PORTS[2]}"
EOF
}

# write_haproxy_cfg FILE NBTHREAD MAXCONN HTTP_PORT TCP_PORT [SPLICE]: keep-alive on both sides,
# server connections reused (`http-reuse always`); SPLICE=1 adds `option splice-request` and
# `option splice-response` to the tcp front.
write_haproxy_cfg() {
    local file=$1 threads=$2 maxconn=$3 http=$4 tcp=$5 splice=${6:-0}
    cat >"$file" <<EOF
global
    nbthread $threads
    maxconn $maxconn

defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive

frontend web
    mode http
    bind 127.0.0.1:$http
    default_backend web

backend web
    mode http
    balance roundrobin
    http-reuse always
    server b1 127.0.0.1:${BACKEND_PORTS[0]}
    server b2 127.0.0.1:${BACKEND_PORTS[1]}
    server b3 127.0.0.1:${BACKEND_PORTS[2]}

listen bulk
    mode tcp
    bind 127.0.0.1:$tcp
    balance roundrobin
$( [ "$splice" = 1 ] && printf "    option splice-request\n    option splice-response" )
    server b1 127.0.0.1:${BACKEND_PORTS[0]}
    server b2 127.0.0.1:${BACKEND_PORTS[1]}
    server b3 127.0.0.1:${BACKEND_PORTS[2]}
EOF
}

# write_nginx_conf DIR HTTP_PORT TCP_PORT: DIR/nginx.conf with one worker, an upstream
# keep-alive pool and stream{} for tcp; logs and temp files under DIR.
write_nginx_conf() {
    local d=$1 http=$2 tcp=$3
    mkdir -p "$d/logs" "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
daemon off;
user root;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fcgi; uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
    # NGINX closes a client connection after 1000 requests by default; HAProxy does not.
    keepalive_requests 1000000;
    upstream web {
        server 127.0.0.1:${BACKEND_PORTS[0]};
        server 127.0.0.1:${BACKEND_PORTS[1]};
        server 127.0.0.1:${BACKEND_PORTS[2]};
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$http;
        location / {
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
stream {
    upstream bulk {
        server 127.0.0.1:${BACKEND_PORTS[0]};
        server 127.0.0.1:${BACKEND_PORTS[1]};
        server 127.0.0.1:${BACKEND_PORTS[2]};
    }
    server {
        listen 127.0.0.1:$tcp;
        proxy_pass bulk;
    }
}
EOF
}

# stop_pid PID: TERM, bounded wait, then KILL (our own PIDs only).
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
}

# port_busy PORT: true when something accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# install_apt_tools LOGFILE [PACKAGE:COMMAND...]: `apt-get install` HAProxy, NGINX (with its
# stream module), wrk, curl and each extra PACKAGE whose COMMAND is missing, when one is, without
# letting Debian's maintainer scripts start the services.
# POLICY_RC_CREATED=1 while our /usr/sbin/policy-rc.d is in place: the caller's exit trap removes
# it if the install is interrupted. Fails when apt-get does or the stream module is still missing.
POLICY_RC_CREATED=0
install_apt_tools() {
    local logf=$1 need=() extra
    for extra in "${@:2}"; do command -v "${extra#*:}" >/dev/null 2>&1 || need+=("${extra%%:*}"); done
    command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
    command -v nginx >/dev/null 2>&1 || need+=(nginx)
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    # Debian builds the stream module as a dynamic module (libnginx-mod-stream).
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    if [ "${#need[@]}" -gt 0 ]; then
        log "installing: ${need[*]}"
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            POLICY_RC_CREATED=1
        fi
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update && apt-get install -y haproxy nginx wrk libnginx-mod-stream curl "${need[@]}"; } >"$logf" 2>&1
        local rc=$?
        if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
        [ "$rc" = 0 ] || return 1
    fi
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || { log "nginx stream module not found"; return 1; }
}

# median: the median of the numbers on stdin, one a line (the mean of the middle two for an even
# count); fails on none.
median() {
    sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
