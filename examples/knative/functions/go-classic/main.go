// A classic-mode ng-watchdog function: one process per request. The request body, or a CloudEvent's data,
// arrives on stdin; a CloudEvent's attributes arrive as CE_* variables. What this prints is the response, or
// the data of the reply event; printing nothing acknowledges an event with 202 and no reply.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

type reply struct {
	Status string `json:"status"`
	Type   string `json:"type,omitempty"`
	Source string `json:"source,omitempty"`
	ID     string `json:"id,omitempty"`
	Length int    `json:"length"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		// A non-zero exit is a 500 for plain HTTP and for events, which Knative then retries.
		fmt.Fprintln(os.Stderr, "reading stdin:", err)
		os.Exit(1)
	}

	eventType := os.Getenv("CE_TYPE")
	switch {
	case eventType == "":
		// Plain HTTP: Http_Method and Http_Path describe the request.
		fmt.Printf("Hello from Go: %s %s with %d bytes\n", os.Getenv("Http_Method"), os.Getenv("Http_Path"), len(data))
	case strings.HasSuffix(eventType, ".created"):
		out, _ := json.Marshal(reply{
			Status: "accepted",
			Type:   eventType,
			Source: os.Getenv("CE_SOURCE"),
			ID:     os.Getenv("CE_ID"),
			Length: len(data),
		})
		fmt.Println(string(out))
	default:
		// Not ours: no output, so no reply event goes back to the broker.
	}
}
