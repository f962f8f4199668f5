// A Go net/http client for the end-to-end tests: HTTP/2 over Go's own
// crypto/tls (no OpenSSL), many concurrent requests multiplexed on one
// connection. Prints {"pid": PID, "calls": N, "proto": "HTTP/2.0"}.
//
// Usage: go_client -base URL -ca CA.pem -key KEY -n N
//
// With -bench N (cargo xtask bench): N sequential keep-alive POSTs over
// HTTP/1.1 after -warm untimed ones; prints {"pid", "cpu_us", "secs"}, the
// process's own CPU (getrusage: user + system, every thread) over the timed calls.
// With -download URL -times N: GET URL N times over one keep-alive HTTP/1.1
// connection, discarding the body; prints {"pid", "cpu_us", "secs", "bytes"}.
// With -paced -every D: calls one after another over one keep-alive
// connection (with -fresh, a new connection each), D apart, every other one
// streamed, until stdin closes (a steady rate across an agent upgrade);
// prints {"pid", "calls"}.
// With -each-line: one such call for each line read from stdin, until it
// closes; prints {"pid", "calls"}. Both over HTTP/1.1, or with -h2 over
// HTTP/2 (ALPN). A line "hold PATH" makes that call's body 8 MiB (written by
// net/http 4 KiB at a time), its head asking the test server to read the body
// only once PATH exists.
// With -idle: no call; waits for its stdin to close (a process to probe first).
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func cpuMicros() int64 {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		panic(err)
	}
	return u.Utime.Sec*1e6 + u.Utime.Usec + u.Stime.Sec*1e6 + u.Stime.Usec
}

// bench: the method-cost workload (~1 KB JSON each way), one call at a time.
func bench(base string, pool *x509.CertPool, n, warm int) {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	body := fmt.Sprintf(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}]}`, strings.Repeat("x", 950))
	call := func() {
		resp, err := client.Post(base+"/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			panic(err)
		}
		out, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || len(out) < 900 {
			panic(fmt.Sprintf("status %d, %d bytes, %v", resp.StatusCode, len(out), err))
		}
	}
	for i := 0; i < warm; i++ {
		call()
	}
	c0, t0 := cpuMicros(), time.Now()
	for i := 0; i < n; i++ {
		call()
	}
	out, _ := json.Marshal(map[string]any{
		"pid": os.Getpid(), "cpu_us": cpuMicros() - c0, "secs": time.Since(t0).Seconds(),
	})
	fmt.Println(string(out))
}

// download: what a Go service pays for TLS it does not call an LLM over.
func download(url string, pool *x509.CertPool, times int) {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	c0, t0 := cpuMicros(), time.Now()
	var total int64
	for i := 0; i < times; i++ {
		resp, err := client.Get(url)
		if err != nil {
			panic(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			panic(fmt.Sprintf("status %d after %d bytes: %v", resp.StatusCode, n, err))
		}
		total += n
	}
	out, _ := json.Marshal(map[string]any{
		"pid": os.Getpid(), "cpu_us": cpuMicros() - c0, "secs": time.Since(t0).Seconds(), "bytes": total,
	})
	fmt.Println(string(out))
}

// chat makes one chat completion (streamed when i is odd) and reads it whole;
// with hold, a body of 8 MiB the server reads once that file exists.
func chat(client *http.Client, base, key string, i int, hold string) (string, error) {
	content := fmt.Sprintf("call %d", i)
	if hold != "" {
		content = strings.Repeat("x", 8<<20)
	}
	body := map[string]any{
		"model":    "gpt-4o-mini",
		"messages": []map[string]string{{"role": "user", "content": content}},
	}
	if i%2 == 1 {
		body["stream"] = true
		body["stream_options"] = map[string]bool{"include_usage": true}
	}
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", base+"/chat/completions", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	if hold != "" {
		req.Header.Set("x-test-hold-body", hold)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || len(out) == 0 {
		return "", fmt.Errorf("status %d, %d bytes, %v", resp.StatusCode, len(out), err)
	}
	return resp.Proto, nil
}

// sequential makes one call after another while next says so (line, if
// any, the line read for it), then prints {"pid", "calls"}.
func sequential(client *http.Client, base, key string, next func() bool, line func() string) {
	calls := 0
	for next() {
		hold := ""
		if line != nil {
			hold = strings.TrimPrefix(line(), "hold ")
			if hold == line() {
				hold = ""
			}
		}
		if _, err := chat(client, base, key, calls, hold); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		calls++
	}
	out, _ := json.Marshal(map[string]any{"pid": os.Getpid(), "calls": calls})
	fmt.Println(string(out))
}

// eachLineOfStdin: a call for each line read from stdin, until it closes,
// and the line read.
func eachLineOfStdin() (func() bool, func() string) {
	lines := bufio.NewScanner(os.Stdin)
	return lines.Scan, lines.Text
}

// untilStdinCloses: a call every pause until stdin closes (the first at once).
func untilStdinCloses(pause time.Duration) func() bool {
	var done atomic.Bool
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		done.Store(true)
	}()
	first := true
	return func() bool {
		if !first {
			time.Sleep(pause)
		}
		first = false
		return !done.Load()
	}
}

func main() {
	base := flag.String("base", "", "OpenAI-style base URL, e.g. https://api.openai.com:8443/v1")
	ca := flag.String("ca", "", "CA certificate (PEM)")
	key := flag.String("key", "", "API key")
	n := flag.Int("n", 10, "concurrent calls (half of them streamed)")
	benchN := flag.Int("bench", -1, "sequential HTTP/1.1 calls timed (bench mode)")
	warm := flag.Int("warm", 0, "bench mode: untimed calls first")
	dl := flag.String("download", "", "GET this URL -times times (download mode)")
	times := flag.Int("times", 1, "download mode: how many times")
	paced := flag.Bool("paced", false, "sequential keep-alive calls, -every apart, until stdin closes")
	every := flag.Duration("every", 20*time.Millisecond, "paced mode: the pause between calls")
	fresh := flag.Bool("fresh", false, "paced and each-line modes: a new connection for each call")
	eachLine := flag.Bool("each-line", false, "one keep-alive call per line read from stdin")
	h2 := flag.Bool("h2", false, "paced and each-line modes: HTTP/2")
	idle := flag.Bool("idle", false, "make no call; wait for stdin to close")
	flag.Parse()
	pem, err := os.ReadFile(*ca)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	if *dl != "" {
		download(*dl, pool, *times)
		return
	}
	if *benchN >= 0 {
		bench(*base, pool, *benchN, *warm)
		return
	}
	if *idle {
		_, _ = io.Copy(io.Discard, os.Stdin)
		return
	}
	if *eachLine || *paced {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: *fresh, ForceAttemptHTTP2: *h2}}
		next, line := eachLineOfStdin()
		if *paced {
			next, line = untilStdinCloses(*every), nil
		}
		sequential(client, *base, *key, next, line)
		return
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
	}}
	var wg sync.WaitGroup
	protos := make([]string, *n)
	errs := make([]error, *n)
	for i := 0; i < *n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			proto, err := chat(client, *base, *key, i, "")
			errs[i] = err
			protos[i] = proto
		}(i)
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil {
			fmt.Fprintln(os.Stderr, e)
			os.Exit(1)
		}
	}
	proto := ""
	if *n > 0 {
		proto = protos[0]
	}
	out, _ := json.Marshal(map[string]any{"pid": os.Getpid(), "calls": *n, "proto": proto})
	fmt.Println(string(out))
}
