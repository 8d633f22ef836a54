package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/usersync/usersync/projections"
)

func parkedCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("parked", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data, dataEnv := dataFlag(fs)
	storeURL, storeEnv := storeFlag(fs)
	handler := fs.String("handler", "", "only this handler's parked events")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	// The parked events are listed in views.db: the log is not read, but
	// --store says where it is, and so whether --data holds events.db.
	spec, err := parseStore(*storeURL)
	if err != nil {
		return explainEnv(err, storeEnv())
	}
	paths, err := existingDataFor(*data, spec)
	if err != nil {
		return explainEnv(err, dataEnv())
	}
	views, err := projections.Open(ctx, paths.views())
	if err != nil {
		return err
	}
	defer views.Close()
	parked, err := views.Parked(ctx, *handler)
	if err != nil {
		return err
	}
	if len(parked) == 0 {
		fmt.Fprintln(stdout, "no parked events")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HANDLER\tPOSITION\tSTREAM\tVERSION\tTYPE\tPARKED AT\tERROR")
	for _, pe := range parked {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\t%s\n", pe.Handler, pe.Position, pe.Stream, pe.Version, pe.Type, pe.ParkedAt.Format(time.RFC3339), pe.Error)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\nA view's parked events are applied again by usersync rebuild once this build can read them.")
	return nil
}
