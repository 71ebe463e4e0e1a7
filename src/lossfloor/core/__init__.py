"""The ground floor: atomic files, values with standard errors, user-input errors, file schemas and the
`Registry` every choice list comes from.  Imports nothing else of lossfloor."""
