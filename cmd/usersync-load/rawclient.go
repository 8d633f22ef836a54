package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"strconv"
	"syscall"
	"time"
)

// rawConn is one keep-alive connection that sends one request at a time,
// written by hand and read with http.ReadResponse: without the goroutines
// and hand-offs of net/http's Transport, the tool spends about half as
// much CPU per webhook, which it otherwise takes from the usersync it
// measures on the same cores. Plain http:// only (https goes through
// net/http).
type rawConn struct {
	addr, host  string
	allowRemote bool
	timeout     time.Duration

	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
	// reused is set once the connection answered a request: a failure
	// before any answer on a reused connection (closed while idle) is
	// retried once on a new one.
	reused bool
	buf    []byte
}

// answer is a response as the tool reads it.
type answer struct {
	status int
	body   []byte
}

func (rc *rawConn) dial(ctx context.Context) error {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	if !rc.allowRemote {
		d.Control = func(_, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("connect to %s: %w", address, errNotLoopback)
			}
			return nil
		}
	}
	c, err := d.DialContext(ctx, "tcp", rc.addr)
	if err != nil {
		return err
	}
	rc.c, rc.br, rc.bw, rc.reused = c, bufio.NewReaderSize(c, 16<<10), bufio.NewWriterSize(c, 16<<10), false
	return nil
}

func (rc *rawConn) close() {
	if rc.c != nil {
		_ = rc.c.Close()
		rc.c = nil
	}
}

// do sends method target (path and query) with an optional body, and
// reads the answer.
func (rc *rawConn) do(ctx context.Context, method, target, contentType string, body []byte) (answer, error) {
	a, err, retry := rc.try(ctx, method, target, contentType, body)
	if err != nil && retry && ctx.Err() == nil {
		a, err, _ = rc.try(ctx, method, target, contentType, body)
	}
	return a, err
}

func (rc *rawConn) try(ctx context.Context, method, target, contentType string, body []byte) (_ answer, _ error, retry bool) {
	if rc.c == nil {
		if err := rc.dial(ctx); err != nil {
			return answer{}, err, false
		}
	}
	reused := rc.reused
	if err := rc.c.SetDeadline(time.Now().Add(rc.timeout)); err != nil {
		rc.close()
		return answer{}, err, reused
	}
	b := rc.buf[:0]
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, target...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, rc.host...)
	b = append(b, "\r\nUser-Agent: usersync-load\r\n"...)
	if body != nil {
		b = append(b, "Content-Type: "...)
		b = append(b, contentType...)
		b = append(b, "\r\nContent-Length: "...)
		b = strconv.AppendInt(b, int64(len(body)), 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	b = append(b, body...)
	rc.buf = b
	stop := context.AfterFunc(ctx, func() { _ = rc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := rc.bw.Write(b); err != nil {
		rc.close()
		return answer{}, rc.ctxErr(ctx, err), reused
	}
	if err := rc.bw.Flush(); err != nil {
		rc.close()
		return answer{}, rc.ctxErr(ctx, err), reused
	}
	resp, err := nethttp.ReadResponse(rc.br, nil)
	if err != nil {
		rc.close()
		// Nothing was answered: a keep-alive connection closed by the
		// server while idle can take the request again on a new one.
		return answer{}, rc.ctxErr(ctx, err), reused && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		rc.close()
		return answer{}, rc.ctxErr(ctx, err), false
	}
	if resp.Close {
		rc.close()
	} else {
		rc.reused = true
	}
	return answer{status: resp.StatusCode, body: data}, nil, false
}

// ctxErr is ctx's error when ctx ended the request, else err.
func (rc *rawConn) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("no answer within --timeout %s: %w", rc.timeout, context.DeadlineExceeded)
	}
	return err
}
