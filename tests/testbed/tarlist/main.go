// Command tarlist prints what Go's archive/tar Reader.Next() returns for a tar archive,
// so that the project's own tar reader can be compared with it (tests/test_tar_go.py).
//
// Usage: tarlist < archive.tar       one archive on stdin
//
//	tarlist -batch < frames     archives framed as an 8-byte big-endian length + bytes
//
// For each archive, one JSON line per header Next() returns (strings hex-encoded, since
// they are bytes), with the sha256 and length of the data read from the entry, then one
// line with the outcome: {"end":"EOF"} or {"end":"error","error":"..."}.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

type entry struct {
	Name       string            `json:"name"`
	Linkname   string            `json:"linkname"`
	Typeflag   int               `json:"typeflag"`
	Size       int64             `json:"size"`
	Mode       int64             `json:"mode"`
	Uid        int               `json:"uid"`
	Gid        int               `json:"gid"`
	Uname      string            `json:"uname"`
	Gname      string            `json:"gname"`
	Mtime      []int64           `json:"mtime"`
	Atime      []int64           `json:"atime"`
	Ctime      []int64           `json:"ctime"`
	Devmajor   int64             `json:"devmajor"`
	Devminor   int64             `json:"devminor"`
	PAXRecords map[string]string `json:"pax"`
	DataSHA256 string            `json:"data_sha256"`
	DataLen    int64             `json:"data_len"`
	DataError  string            `json:"data_error,omitempty"`
}

type end struct {
	End   string `json:"end"`
	Error string `json:"error,omitempty"`
}

func hx(s string) string { return hex.EncodeToString([]byte(s)) }

func stamp(t time.Time) []int64 {
	if t.IsZero() {
		return nil
	}
	return []int64{t.Unix(), int64(t.Nanosecond())}
}

func list(r io.Reader, out *json.Encoder) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out.Encode(end{End: "EOF"})
		}
		if err != nil {
			return out.Encode(end{End: "error", Error: err.Error()})
		}
		e := entry{
			Name: hx(hdr.Name), Linkname: hx(hdr.Linkname), Typeflag: int(hdr.Typeflag),
			Size: hdr.Size, Mode: hdr.Mode, Uid: hdr.Uid, Gid: hdr.Gid,
			Uname: hx(hdr.Uname), Gname: hx(hdr.Gname),
			Mtime: []int64{hdr.ModTime.Unix(), int64(hdr.ModTime.Nanosecond())},
			Atime: stamp(hdr.AccessTime), Ctime: stamp(hdr.ChangeTime),
			Devmajor: hdr.Devmajor, Devminor: hdr.Devminor,
		}
		if hdr.PAXRecords != nil {
			e.PAXRecords = make(map[string]string, len(hdr.PAXRecords))
			for k, v := range hdr.PAXRecords {
				e.PAXRecords[hx(k)] = hx(v)
			}
		}
		h := sha256.New()
		n, err := io.Copy(h, tr)
		e.DataSHA256, e.DataLen = hex.EncodeToString(h.Sum(nil)), n
		if err != nil {
			e.DataError = err.Error()
		}
		if err := out.Encode(e); err != nil {
			return err
		}
		if e.DataError != "" {
			return out.Encode(end{End: "error", Error: e.DataError})
		}
	}
}

func main() {
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	out := json.NewEncoder(w)
	in := bufio.NewReader(os.Stdin)
	if len(os.Args) > 1 && os.Args[1] == "-batch" {
		for {
			var n uint64
			if err := binary.Read(in, binary.BigEndian, &n); err == io.EOF {
				return
			} else if err != nil {
				fmt.Fprintln(os.Stderr, "tarlist:", err)
				os.Exit(2)
			}
			buf := make([]byte, n)
			if _, err := io.ReadFull(in, buf); err != nil {
				fmt.Fprintln(os.Stderr, "tarlist:", err)
				os.Exit(2)
			}
			if err := list(bytes.NewReader(buf), out); err != nil {
				fmt.Fprintln(os.Stderr, "tarlist:", err)
				os.Exit(2)
			}
		}
	}
	if err := list(in, out); err != nil {
		fmt.Fprintln(os.Stderr, "tarlist:", err)
		os.Exit(2)
	}
}
