package ws

import (
	"embed"
	"net/http"
)

//go:embed static/index.html static/pubmesh.js static/pubmesh-presence.js static/admin.html static/admin.js static/admin.css
var static embed.FS

// StaticFile returns an embedded file: "pubmesh.js" (the JavaScript
// client), "pubmesh-presence.js" (its presence part, which pubmesh.js
// imports from next to itself), "index.html" (the demo page), or the admin
// page's "admin.html", "admin.js" and "admin.css".
func StaticFile(name string) ([]byte, error) { return static.ReadFile("static/" + name) }

func serveStatic(name, contentType string) http.HandlerFunc {
	b, err := StaticFile(name)
	if err != nil {
		panic("ws: missing embedded file " + name) // a build defect, caught by every test
	}
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Write(b)
	}
}
