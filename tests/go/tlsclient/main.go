// A Go client for the capture tests: one OpenAI-style chat call over
// crypto/tls (net/http) to the local fake server, plain or streamed.
//
// Usage: tlsclient BASE_URL plain|stream|slow|wrapped [WAIT_MS]
//
// WAIT_MS delays the call, leaving a tracer time to attach after exec.
// wrapped: the plain call over a tls.Conn whose net.Conn is the client's own
// type, a *wrappedConn embedding the net.TCPConn, not the *net.TCPConn: the
// same fields lead to the descriptor, under another type.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) != 3 && len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: tlsclient BASE_URL plain|stream|slow|wrapped [WAIT_MS]")
		os.Exit(2)
	}
	base, mode := os.Args[1], os.Args[2]
	if len(os.Args) == 4 {
		ms, err := strconv.Atoi(os.Args[3])
		if err != nil {
			fmt.Fprintln(os.Stderr, "WAIT_MS:", err)
			os.Exit(2)
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`
	if mode == "stream" {
		body = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`
	}
	// slow: a stream of 600 chunks a second apart; the test kills the client
	// while a goroutine blocks in (*tls.Conn).Read.
	if mode == "slow" {
		body = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"test_chunks":600,"test_delay_ms":1000}`
	}
	transport := &http.Transport{
		// The test server's certificate is self-signed.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}
	if mode == "wrapped" {
		transport.DialTLSContext = dialWrapped
	}
	client := &http.Client{Timeout: 20 * time.Second, Transport: transport}
	req, err := http.NewRequest("POST", base+"/v1/chat/completions", bytes.NewBufferString(body))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	req.Header.Set("content-type", "application/json")
	req.Header.Set("authorization", "Bearer sk-SECRET-go")
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if resp.StatusCode != 200 {
		fmt.Fprintf(os.Stderr, "status %d: %s\n", resp.StatusCode, out)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}

// wrappedConn is a net.Conn of the client's own type.
type wrappedConn struct{ net.TCPConn }

func dialWrapped(ctx context.Context, network, addr string) (net.Conn, error) {
	raw, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(&wrappedConn{*raw.(*net.TCPConn)}, &tls.Config{InsecureSkipVerify: true})
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return conn, nil
}
